"""The harness: code that builds both twins and compares them.

    compare        `python -m parity check`: forward, gradients, BN statistics, steps, loss, LR, preprocessing
    bench          `python -m parity bench`: the MindSpore twin against its peers, side by side
    bench_worker   a process of the bench hosting peers (one framework each), timing one call per request
    bench_convert  timing of the converter CLI
    diff           `python -m parity diff`: the first stage where two checkpoints or two frameworks part ways
    verify         run a checkpoint and its conversion in the two twins (`--verify`)
    golden         the PyTorch twin in float64, ReLU6 masks captured from and applied to each side
    sample_weights checkpoints like real ones (calibrated, extreme BatchNorm), and a block changed by 1%
    convert_cli    the converter's command line
    command        the one way its command-line tools run: parse, run, exit codes, one error line
"""
