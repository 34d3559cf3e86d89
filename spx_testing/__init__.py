"""Test and benchmark support that ships with the package: the process harness and the vendor fakes.

* :mod:`spx_testing.process`: run a child process (a service, the CLI, a script) with its output
  captured live, bounded waits, a clean stop and the first failure reported with that output.
* :mod:`spx_testing.fakes`: faithful loopback fakes of the vendors (Massive market data, Tradier
  brokerage) for developing and testing against without an account or a network.

It sits above ``services`` (the fakes use the feed's wire helpers); nothing in ``spx_common`` or
``services`` imports it.
"""

from spx_testing.process import ProcessFailed, Processes, ServiceProcess, eventually, free_port

__all__ = ["ProcessFailed", "Processes", "ServiceProcess", "eventually", "free_port"]
