from vecap_cli.cli.app import main

main()
