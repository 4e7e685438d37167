"""``python -m wandb_serverless.cli``."""

import sys

from wandb_serverless.cli import main

sys.exit(main())
