"""The reviewer app's logic (the Gradio layout itself is `app.py` at the repository root, as Spaces expects).

Modules: `service` (`AppService`: the event functions the layout calls: analyse, view, review, submit),
`views` (pure presentation: checklists, diff, findings table, provenance). Hands on: component values.
"""
