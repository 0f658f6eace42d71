"""The OpenAI-compatible server: request schema and validation (:mod:`.schema`), the concept
library (:mod:`.concepts`), the engine protocol (:mod:`.engine`), the transformers engine
(:mod:`.transformers_engine`), and the HTTP app (:mod:`.app`). Engines never parse HTTP."""
