"""The course: one package per lesson, plus `common` for what is not course material."""
