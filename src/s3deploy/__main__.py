from s3deploy.cli.app import main

main()
