from s3deploy.cli import main

main()
