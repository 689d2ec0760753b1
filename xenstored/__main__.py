import sys

from xenstored.main import main

sys.exit(main())
