"""A package found through ``wsgi_python_path``; served as ``ngxtest_dotted.web:app``."""
