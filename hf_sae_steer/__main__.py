from hf_sae_steer.cli.main import main

raise SystemExit(main())
