"""Lesson 07: durable tasks spawn child tasks and survive crashes by replaying their history."""
