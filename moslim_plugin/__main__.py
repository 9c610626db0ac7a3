import sys

from moslim_plugin.cli import main

sys.exit(main())
