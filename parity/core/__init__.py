"""The framework-neutral core: imports no twin and no harness module.

    spec          the MobileNetV2 architecture as data (t, c, n, s), width rules
    layouts       each tensor's name in torchvision, ms-official and mindcv layouts
    converter     read / detect / rename / write checkpoints (.pth, .ckpt, .safetensors)
    files         the one atomic-write helper, and one-line error text
    options       one spelling per command-line option (--data-path; --data-path accepted), near-miss hints
    interrupts    Ctrl+C in a command-line tool: one line, exit 130, wherever it lands
    errors        UserError: the base of every error a user can fix (bad input, an unwritable destination)
    cli           run_cli: the one error contract of every tool (one `error:` line, exit 2; Ctrl+C 130)
    schedule      the warmup + cosine learning-rate schedule (the official get_lr)
    loss          reference label-smoothed cross entropy (numpy)
    param_groups  which parameters take weight decay
    preprocess    preprocessing constants both twins use
    difference    max abs / max rel difference, cosine similarity, share within 1e-3: one table's figures
    tolerances    every parity tolerance, with its reason
    verdict       cross-framework verdicts against a float64 golden: error <= k x the float32 noise floor
"""
