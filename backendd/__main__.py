import sys

from backendd.main import main

sys.exit(main())
