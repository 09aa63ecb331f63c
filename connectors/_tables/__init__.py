"""Code the connectors that read spreadsheets (csvfile, gsheets) share: cells as Japanese
offices write them (令和 dates, `1,234`, `△12`, `48.2%`), the header and rows of a table, the
mapping of its columns to observations, and the spool that keeps memory flat however long the
table. Not a connector: the registry skips folders whose name starts with "_"."""
