import sys

from noisylm.cli import main

sys.exit(main())
