"""``lorastack serve``: the library and the studio in a browser, over the packages the command line uses.

>>> from lorastack.web.app import create_app
>>> app = create_app(default_base="toy")          # an ASGI app (FastAPI); uvicorn serves it
"""
