"""The offline GPU bundle: packing it here (pack), running it on the host (host), sizing a budgeted run there
(measure, sizing), its page here (summary), the command (cli)."""

__all__ = ['cli', 'host', 'measure', 'pack', 'sizing', 'summary']
