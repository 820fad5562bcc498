from agora_cli.cli import main

main()
