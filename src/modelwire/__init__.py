"""modelwire: an OpenAI provider library and an LLM gateway.

The library in one breath::

    import modelwire as mw

    client = mw.OpenAI()                      # OPENAI_API_KEY / OPENAI_BASE_URL
    reply = await client.complete(model="gpt-5.1", messages=[mw.user("Hello")])
    print(reply.text, reply.usage.cost)

The public API is what this module exports (``__all__``); the subpackages are implementation and
may change between releases.
"""

from ._version import __version__
from .errors import (
    AuthenticationError,
    ContentFilterError,
    ContextLengthError,
    InvalidRequestError,
    ModelwireError,
    NotFoundError,
    PermissionDeniedError,
    PreviousResponseNotFound,
    ProtocolError,
    RateLimitError,
    TimeoutError,
    UpstreamUnavailableError,
)
from .media_types import GeneratedImage, ImageResult, MediaUsage, Transcript, Video, VideoPage
from .providers.catalog import Catalog, ModelProfile, Price
from .providers.openai import Embeddings, OpenAI
from .providers.retry import RetryPolicy
from .providers.session import Session
from .providers.websocket import SocketPolicy, TransportMode
from .types import (
    Audio,
    BlockDelta,
    BlockStart,
    BlockStop,
    File,
    Finish,
    Image,
    Message,
    Part,
    ProviderItem,
    Reasoning,
    Refusal,
    Request,
    Response,
    ResponseFormat,
    Start,
    StreamError,
    StreamEvent,
    Text,
    Tool,
    ToolCall,
    ToolName,
    ToolResult,
    Usage,
    UsageUpdate,
    assistant,
    developer,
    system,
    tool_result,
    user,
)

__all__ = [
    "Audio",
    "AuthenticationError",
    "BlockDelta",
    "BlockStart",
    "BlockStop",
    "Catalog",
    "ContentFilterError",
    "ContextLengthError",
    "Embeddings",
    "File",
    "Finish",
    "GeneratedImage",
    "Image",
    "ImageResult",
    "InvalidRequestError",
    "MediaUsage",
    "Message",
    "ModelProfile",
    "ModelwireError",
    "NotFoundError",
    "OpenAI",
    "Part",
    "PermissionDeniedError",
    "PreviousResponseNotFound",
    "Price",
    "ProtocolError",
    "ProviderItem",
    "RateLimitError",
    "Reasoning",
    "Refusal",
    "Request",
    "Response",
    "ResponseFormat",
    "RetryPolicy",
    "Session",
    "SocketPolicy",
    "Start",
    "StreamError",
    "StreamEvent",
    "Text",
    "TimeoutError",
    "Tool",
    "ToolCall",
    "ToolName",
    "ToolResult",
    "Transcript",
    "TransportMode",
    "UpstreamUnavailableError",
    "Usage",
    "UsageUpdate",
    "Video",
    "VideoPage",
    "__version__",
    "assistant",
    "developer",
    "system",
    "tool_result",
    "user",
]
