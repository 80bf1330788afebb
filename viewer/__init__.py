"""The course's viewer: a read-only web page of a lesson's queues, workers and tasks.

- `__main__.py`: `python -m viewer` (`make viewer`), on 127.0.0.1.
- `app.py`: the Starlette application: pages, their live streams, operations.
- `pages.py`: what each page reads, and the task timeline built from a history.
- `reading.py`: the read-only pool the pages read on, and what a failed read says.
- `live.py`: the LISTEN thread that wakes the live pages, and the poll behind it.
- `operations.py`: replay, fork and cancel, through the lesson's history tool.
- `lessons.py`: which lesson is shown, and what its schema adds.
- `additions.py`: what lessons 12 to 15 add to the pages.
- `sql/lessonNN/queries.sql`: the reads of what lesson NN adds; `db/` is generated
  from them by sqlc.
- `templates/`, `static/`: Jinja2 templates (autoescaped), one CSS and one small
  script; no front-end build step.
"""
