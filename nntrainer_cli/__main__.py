from nntrainer_cli.cli import main

main()
