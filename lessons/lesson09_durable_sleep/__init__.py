"""Lesson 09: durable sleep; a sleeping or waiting durable task is suspended, and holds no slot."""
