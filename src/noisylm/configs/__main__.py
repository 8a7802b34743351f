"""``python -m noisylm.configs [--check] README.md``: regenerate the config field tables of Markdown files."""

import sys

from noisylm.configs.fields import main

sys.exit(main())
