"""noisylm: random noise in language-model pre-training data.

Data flow (each arrow is one CLI subcommand and one public function):

    text ──prepare──▶ shards ──inject──▶ noisy shards ──train──▶ run dir ──sweep/report──▶ figures
                                                              └──theory──▶ predicted vs measured
    labelled data ──extract──▶ feature cache ──probe (CE | CE+LGM)──▶ tables
"""

__version__ = "0.1.0"
