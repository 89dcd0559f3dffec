"""The command line: flags to one call, results to output and exit codes. The only place that exits."""
