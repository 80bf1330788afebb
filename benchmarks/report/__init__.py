"""The report: rows as tables, the context every report states, the curriculum's
targets met or not, and the chart (the only module that imports matplotlib)."""
