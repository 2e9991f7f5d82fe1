"""Pure algorithms: advantage estimators, policy losses, KL estimators, loss aggregation, each registered by name
(``laconic.registry``) with one signature per kind; torch only, no model, no engine, no distributed state."""
