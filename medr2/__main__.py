from medr2.cli import main

raise SystemExit(main())
