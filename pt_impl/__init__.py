"""MobileNetV2 in PyTorch: the twin of `ms_impl`, file for file (state_dict keys identical to torchvision's).

    mobilenetv2   MobileNetV2Backbone, MobileNetV2Head, MobileNetV2
    loss          label-smoothed cross entropy
    optim         SGD momentum in MindSpore's form, weight decay on conv/dense weights only
    transforms    train/eval preprocessing (PIL), bit-exact with the MindSpore eval pipeline
    weights       the one way to load a name->array dict into a Module
"""
