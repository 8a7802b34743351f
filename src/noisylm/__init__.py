"""noisylm: random noise in language-model pre-training data.

Data flow (each arrow is one CLI subcommand and one public function); each stage is one subpackage:

    text ──prepare──▶ shards ──inject──▶ noisy shards ──train──▶ run dir ──sweep/report──▶ figures
    (data/)                              (data/)         (training/)        (experiments/)
                                                              └──theory──▶ predicted vs measured (theory/)
    shards ──scan──▶ noise spans, Prop. 1 price, filtered shards (scan/)
    labelled data ──extract──▶ feature cache ──probe (CE | CE+LGM)──▶ tables (probing/)
    labelled text ──finetune (L2-SP | SMART | LNSR, ± LGM)──▶ Table 4 (probing/finetuning/)

`runtime` (device, dtype, threads, processes), `artifacts` (atomic outputs, provenance), `plotting` and
`errors` are shared by every stage; `cli/` is the thin command line, `demo` is `make demo`.
"""

__version__ = "0.1.0"
