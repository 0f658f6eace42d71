"""The OpenAI-compatible server: request bodies (:mod:`.requests`, :mod:`.sampling`,
:mod:`.steering_items`, errors in :mod:`.errors`), the concept library (:mod:`.concepts`), the
engine protocol (:mod:`.engine`), the transformers engine (:mod:`.transformers_engine`), and the
HTTP app (:mod:`.app`). Engines never parse HTTP."""
