import sys

from hypervisord.main import main

sys.exit(main())
