from tau_lab.cli import main

main()
