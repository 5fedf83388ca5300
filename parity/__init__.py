"""What the two twins share, and the harness that proves they agree.

`parity.core` is framework-neutral: it never imports a twin (`ms_impl`,
`pt_impl`) nor the harness, and imports torch/mindspore only inside the
converter's file readers and writers. `parity.harness` builds both twins and
compares them. `tests/test_layering.py` enforces this, lazy imports included.

    core/     spec, layouts, converter, files, schedule, loss, param_groups, preprocess, difference, tolerances
    harness/  compare (`python -m parity check`), diff (`python -m parity diff`), bench, bench_convert, verify,
              convert_cli
    convert   entry point: `python -m parity.convert SRC DST` (mbv2-convert)
    __main__  entry point: `python -m parity {check,bench,diff}` (mbv2-parity)
"""
