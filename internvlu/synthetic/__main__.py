from internvlu.synthetic.checkpoint import main

raise SystemExit(main())
