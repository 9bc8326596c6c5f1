"""``kuosan serve``: a local web page to generate, edit and compare images.

The rooms, from the bottom up: ``uploads`` (images a request sends), ``models`` (the models offered, by name),
``card`` (a model's card), ``forms`` (a request, checked), ``jobs`` (running one on a model), ``queue`` (one
job at a time per model, clients taking turns), ``gallery`` (every result kept, with its parameters),
``service`` (all of that without HTTP) and ``app`` (Starlette: the page and its API). The web framework is
imported only by ``app``: ``pip install 'kuosan[serve]'``.
"""
