import sys

from channels.cli.main import main

sys.exit(main())
