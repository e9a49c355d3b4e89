"""Chat templates as data: one YAML file per model family (read by :mod:`factory.data.template`).

This file makes ``factory.chat_templates`` a regular package, so
``importlib.resources.files("factory.chat_templates")`` finds the YAML files in an editable
install too (setuptools' editable finder cannot import a namespace package nested in ``factory``).
"""
