from mtdistill.cli import main

raise SystemExit(main())
