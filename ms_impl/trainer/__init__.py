"""The MindSpore trainer's engine: everything the command-line tools share, nothing they parse.

    run            build_run: the run's parts in order (config, devices, data, network, LR, optimizer, state or resume)
    loop           the run folder, the epoch loop, the frozen-backbone
                   and head-first paths, the end-of-epoch checkpoint set, the final report
    logs           the console and train.log handlers
    schema         every option declared once: type, default, choices or range, help
    config         reading YAML files and the command line against the schema; relations between keys
    config_files   where the shipped configs are (package data), reading a config file and its base: chain
    recipes        the recommended transfer-learning recipes, picked from --pretrained/--freeze-backbone
    classes        the class list (names, 4 garbage categories): one loader for YAML, config, CSV
    dataset        image lists and mindspore.dataset pipelines
    images         the one "can the pipeline decode this file" check
    photos         a folder of photos: hashes, duplicate groups, train/val split planning (datatools check/split)
    balance        class_balance: inverse-frequency loss weights, the balanced epoch draw
    synthetic      the embedded default data set (no download)
    sharding       which samples a data-parallel rank reads
    distributed    msrun detection, collectives, replica checks
    device         selecting CPU/GPU/Ascend with a one-line error
    train_step     the compiled training step and the replayable dropout
    mixing         mixup and CutMix of a training batch, replayable from (seed, step)
    checkpoint     training checkpoints: save, rotate, resume (from the newest intact one)
    run_folder     the run folder: one trainer at a time (lock), old runs moved aside, never deleted
    pretrained     loading a pretrained backbone for transfer learning
    model_io       loading any converter-readable checkpoint for inference
    transfer       frozen-backbone training on cached features
    feature_cache  extracting and caching pooled backbone features
    metrics        top-1/top-5, loss, confusion matrix, per-class P/R/F1, categories, flip TTA
    report         run files: metrics.csv, per-class table, figures, summary
    contact_sheet  predict --sheet: photos with their predictions in one PNG
    errors         UsageError: bad input, reported as one line with exit 2
"""
