"""Evaluation of generated images: features, quality, diversity, stability and speed, each beside a real floor.

Modules: ``features`` (extractors by name), ``metrics`` (Fréchet distance, KID, precision/recall,
density/coverage, PSNR, SSIM, MS-SSIM), ``diversity``, ``stability``, ``speed``, ``reference`` (cached
reference features), ``shipped`` (reference statistics of the built-in sets, shipped in ``stats/``),
``config`` (:class:`~kuosan.evaluation.config.EvalConfig`), ``validate`` (every input checked before work
starts), ``report`` (:func:`kuosan.evaluation.report.evaluate`), ``cli`` (``kuosan evaluate``).
Nothing is imported here, so ``import kuosan`` stays light.
"""
