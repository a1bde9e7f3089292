import sys

from edgeops.demo import main

sys.exit(main())
