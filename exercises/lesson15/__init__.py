"""Checks of lesson 15's exercises (operating at scale): retention per queue, and
`history_tool history` of an archived task."""
