from physflow.cli import main

main()
