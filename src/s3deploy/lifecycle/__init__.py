"""The CodeDeploy lifecycle: the events in order, and one hook process each."""
