"""dxkpi: everything it installs lives under this one package, so it can sit beside any project.

The code stays in the repository's folders `collector/`, `tasks/` and `connectors/`; the links
`dxkpi/collector`, `dxkpi/tasks` and `dxkpi/connectors` make them `dxkpi.collector`,
`dxkpi.tasks` and `dxkpi.connectors` for setuptools, mypy and pytest alike.
"""
