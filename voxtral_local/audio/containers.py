"""Which containers an upload may be, told from its own bytes, and how FFmpeg may open it.

FFmpeg probes any input against every demuxer it has, and some of them take their media from elsewhere: a
concat script or an HLS/DASH playlist names files or URLs, an SDP description opens RTP ports, an image
sequence pattern names files, `subfile` and the data/URL protocols read other sources. An upload must only ever
be decoded from its own bytes, so the container is told here from its magic bytes, against an explicit
allow-list of demuxers that read nothing but the stream they are given; PyAV then opens the upload with that
demuxer forced, FFmpeg's `format_whitelist` naming only it and `protocol_whitelist` naming no protocol (nested
opens, such as an MP4 `dref` to an external file, then fail). Anything else is refused with one message.

Signatures: the RIFF/RF64 WAVE, AIFF (FORM), CAF, FLAC, Ogg, EBML (Matroska/WebM) and ISO BMFF (MP4/MOV)
magic numbers from their specifications; MPEG audio and ADTS frame headers (ISO/IEC 11172-3, 13818-7); ID3v2
headers and footers (id3.org, ID3v2.4 structure), ID3v1 and APEv2 tags, which MP3 and AAC files may carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import AudioDecodeError


@dataclass(frozen=True)
class Container:
    """One accepted container: its name for people, FFmpeg's demuxer for it, and libsndfile's format name
    where libsndfile may read it (None: PyAV only)."""

    label: str
    demuxer: str
    soundfile: str | None = None


WAV = Container("WAV", "wav", "WAV")
RF64 = Container("WAV (RF64/BW64)", "wav")
AIFF = Container("AIFF", "aiff")
CAF = Container("CAF", "caf")
FLAC = Container("FLAC", "flac", "FLAC")
OGG = Container("Ogg (Vorbis, Opus, FLAC)", "ogg", "OGG")
MATROSKA = Container("WebM/Matroska", "matroska")
MP4 = Container("MP4/M4A/MOV/3GP", "mov")
MP3 = Container("MP3", "mp3", "MP3")
ADTS = Container("AAC (ADTS)", "aac")

ACCEPTED = (WAV, RF64, MP3, MP4, FLAC, OGG, MATROSKA, ADTS, AIFF, CAF)
NOT_ACCEPTED = (
    "The uploaded file is not a decodable audio file: it is none of the accepted containers ("
    + ", ".join(dict.fromkeys(c.label.split(" (")[0] for c in ACCEPTED))
    + ")."
)
# ISO BMFF top-level boxes a file may start with (ISO/IEC 14496-12; QuickTime's `wide` and `pnot`).
_MP4_FIRST_BOXES = frozenset({b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp"})
_ID3V1_BYTES = 128
_APE_FOOTER_BYTES = 32
# How far into an MP3 (after ID3v2 tags) its first frame is looked for, past junk or a partial frame.
_MP3_SYNC_SEARCH_BYTES = 64 * 1024


def sniff(data: bytes) -> Container:
    """The accepted container `data` is, told from its leading bytes (after any ID3v2 tags).

    Raises AudioDecodeError (one message, whatever the bytes hold) for anything else: text such as playlists,
    concat scripts and SDP descriptions, images, documents, other containers.
    """
    start = id3v2_end(data)
    head = data[start : start + 16]
    if start == 0:
        if head[8:12] == b"WAVE" and head[:4] in (b"RIFF", b"RF64", b"BW64"):
            return WAV if head[:4] == b"RIFF" else RF64
        if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
            return AIFF
        if head[:4] == b"caff":
            return CAF
        if head[:4] == b"OggS":
            return OGG
        if head[:4] == b"\x1a\x45\xdf\xa3":
            return MATROSKA
        if head[4:8] in _MP4_FIRST_BOXES:
            return MP4
    if head[:4] == b"fLaC":
        return FLAC
    if is_adts_header(head):
        return ADTS
    if mpeg_audio_header(head) is not None or _mpeg_frames_follow(data, start):
        return MP3
    raise AudioDecodeError(NOT_ACCEPTED)


def open_options(container: Container) -> dict[str, str]:
    """FFmpeg format-context options for opening an upload of `container` in PyAV (with `format=` forced):
    no other demuxer may be probed or nested, and no protocol may be opened (PyAV reads the upload itself, so
    the in-memory stream needs none)."""
    options = {"format_whitelist": container.demuxer, "protocol_whitelist": "none"}
    if container is MP4:
        options["enable_drefs"] = "0"  # FFmpeg's default; external data references must stay off
    return options


def id3v2_end(data: bytes) -> int:
    """Offset just past the ID3v2 tags at the start of `data` (0 if none)."""
    offset = 0
    while data[offset : offset + 3] == b"ID3" and len(data) >= offset + 10:
        flags = data[offset + 5]
        offset += 10 + _syncsafe(data[offset + 6 : offset + 10]) + (10 if flags & 0x10 else 0)
    return min(offset, len(data))


def without_trailing_tags(data: bytes) -> bytes:
    """`data` less the metadata tags appended after MPEG audio: ID3v1 (the last 128 bytes, "TAG"), APEv2
    (a 32-byte "APETAGEX" footer) and ID3v2.4 tags with a footer ("3DI"), in any order. FFmpeg's decoder
    reads such a tag as a corrupt frame."""
    while True:
        end = len(data)
        if end >= _ID3V1_BYTES and data[end - _ID3V1_BYTES : end - _ID3V1_BYTES + 3] == b"TAG":
            data = data[: end - _ID3V1_BYTES]
        elif end >= 10 and data[end - 10 : end - 7] == b"3DI":
            size = 20 + _syncsafe(data[end - 4 : end])
            if size > end or data[end - size : end - size + 3] != b"ID3":
                return data
            data = data[: end - size]
        elif end >= _APE_FOOTER_BYTES and data[end - 32 : end - 24] == b"APETAGEX":
            footer = data[end - 32 :]
            size = int.from_bytes(footer[12:16], "little") + (32 if footer[23] & 0x80 else 0)  # header present
            if not _APE_FOOTER_BYTES <= size <= end:  # the size counts the footer: less is no tag
                return data
            data = data[: end - size]
        else:
            return data


@dataclass(frozen=True)
class MpegAudioHeader:
    """What the first 4 bytes of an MPEG audio frame state (ISO/IEC 11172-3 2.4.1.3, 13818-3)."""

    version: int  # 1, 2 or 25 (MPEG 2.5)
    layer: int  # 1, 2 or 3
    sample_rate: int  # Hz
    channels: int  # 1 or 2
    bitrate: int  # kbit/s
    padding: int  # 0 or 1 slot

    @property
    def frame_bytes(self) -> int:
        """The frame's length in bytes, header included (ISO/IEC 11172-3 2.4.3.1)."""
        if self.layer == 1:
            return (12 * self.bitrate * 1000 // self.sample_rate + self.padding) * 4
        per_slot = 144 if self.layer == 2 or self.version == 1 else 72
        return per_slot * self.bitrate * 1000 // self.sample_rate + self.padding

    @property
    def samples_per_frame(self) -> int:
        """Samples each frame decodes to, per channel."""
        if self.layer == 1:
            return 384
        return 1152 if self.layer == 2 or self.version == 1 else 576

    @property
    def side_info_bytes(self) -> int:
        """Length of a Layer III frame's side information (where a Xing/Info header follows it)."""
        if self.version == 1:
            return 32 if self.channels == 2 else 17
        return 17 if self.channels == 2 else 9


_MPEG_RATES = {1: (44100, 48000, 32000), 2: (22050, 24000, 16000), 25: (11025, 12000, 8000)}
# kbit/s for bit rate indices 1..14, by (MPEG-1 or not, layer); MPEG-2/2.5 layers II and III share a table.
_MPEG_BITRATES = {
    (True, 1): (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}


def mpeg_audio_header(head: bytes) -> MpegAudioHeader | None:
    """The MPEG audio frame header at the start of `head`, or None if it is not a valid one."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    version = {0: 25, 2: 2, 3: 1}.get((head[1] >> 3) & 3)
    layer = {1: 3, 2: 2, 3: 1}.get((head[1] >> 1) & 3)
    bitrate_index, rate_index = head[2] >> 4, (head[2] >> 2) & 3
    if version is None or layer is None or bitrate_index in (0, 15) or rate_index == 3:
        return None  # reserved values; a free-format (index 0) stream is not accepted either
    channels = 1 if head[3] >> 6 == 3 else 2
    bitrate = _MPEG_BITRATES[(version == 1, layer)][bitrate_index - 1]
    padding = (head[2] >> 1) & 1
    return MpegAudioHeader(version, layer, _MPEG_RATES[version][rate_index], channels, bitrate, padding)


def _mpeg_frames_follow(data: bytes, start: int) -> bool:
    """Whether, within the first 64 KiB after `start`, a valid MPEG audio frame header is followed right
    after its frame by another of the same version, layer and rate (a stream that begins with junk or a
    partial frame, which FFmpeg's MP3 demuxer skips)."""
    end = min(len(data), start + _MP3_SYNC_SEARCH_BYTES)
    at = data.find(b"\xff", start, end)
    while at >= 0:
        first = mpeg_audio_header(data[at : at + 4])
        if first is not None:
            nxt = mpeg_audio_header(data[at + first.frame_bytes : at + first.frame_bytes + 4])
            if nxt is not None and (nxt.version, nxt.layer, nxt.sample_rate) == (
                first.version,
                first.layer,
                first.sample_rate,
            ):
                return True
        at = data.find(b"\xff", at + 1, end)
    return False


def is_adts_header(head: bytes) -> bool:
    """Whether `head` starts with an ADTS frame header (ISO/IEC 13818-7 6.2: syncword, layer 0, a valid
    sampling frequency index)."""
    return len(head) >= 7 and head[0] == 0xFF and head[1] & 0xF6 == 0xF0 and (head[2] >> 2) & 0xF < 13


def _syncsafe(four: bytes) -> int:
    return four[0] << 21 | four[1] << 14 | four[2] << 7 | four[3] if len(four) == 4 else 0
