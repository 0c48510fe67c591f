"""The picture code that carries a frame's capture time (stdlib only).

Frame `k` of camera `n` is captured at k x 100 ms since the Unix epoch. Its 320x240 gray
picture holds 64 blocks of 16x16 pixels (16 columns x 4 rows from (32, 96)), aligned on H.264
macroblocks, black for 0 and white for 1, most significant bit first:

    bits 63..24  k (40 bits: enough until the year 3400)
    bits 23..16  n, the camera number (1..255)
    bits 15..0   CRC-16/CCITT-FALSE over the 6 bytes of k and n

A block reads as 1 when the mean of its centre 4x4 pixels is above mid-gray. A frame whose CRC
does not match (a picture the decoder concealed or half-decoded) is not a recorded frame.
"""

WIDTH = 320
HEIGHT = 240
FPS = 10
TICK_NS = 1_000_000_000 // FPS
BLOCK = 16
COLUMNS = 16
ROWS = 4
X0 = 32
Y0 = 96
BACKGROUND = 96
BLACK = 0
WHITE = 255
FRAME_BYTES = WIDTH * HEIGHT


def camera_name(n):
    return f"cam-{n:02d}"


def crc16(data):
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def encode(tick, camera):
    """The 64-bit code of frame `tick` of camera `camera`."""
    tick &= (1 << 40) - 1
    head = (tick << 8) | (camera & 0xFF)
    return (head << 16) | crc16(head.to_bytes(6, "big"))


def decode(code):
    """(tick, camera) from a 64-bit code, or None when its CRC does not match."""
    head = code >> 16
    if crc16(head.to_bytes(6, "big")) != code & 0xFFFF:
        return None
    return head >> 8, head & 0xFF


_PLAIN_ROW = bytes([BACKGROUND]) * WIDTH
_TOP = _PLAIN_ROW * Y0
_BOTTOM = _PLAIN_ROW * (HEIGHT - Y0 - ROWS * BLOCK)
_WHITE = bytes([WHITE]) * BLOCK
_BLACK = bytes([BLACK]) * BLOCK
_LEFT = bytes([BACKGROUND]) * X0
_RIGHT = bytes([BACKGROUND]) * (WIDTH - X0 - COLUMNS * BLOCK)


def picture(tick, camera):
    """The GRAY8 picture of frame `tick` of camera `camera`."""
    code = encode(tick, camera)
    rows = [_TOP]
    for r in range(ROWS):
        line = bytearray(_LEFT)
        for c in range(COLUMNS):
            bit = (code >> (63 - (r * COLUMNS + c))) & 1
            line += _WHITE if bit else _BLACK
        line += _RIGHT
        rows.append(bytes(line) * BLOCK)
    rows.append(_BOTTOM)
    return b"".join(rows)


def read(frame):
    """(tick, camera) from a decoded GRAY8 picture of FRAME_BYTES, or None."""
    if len(frame) < FRAME_BYTES:
        return None
    code = 0
    for r in range(ROWS):
        y = Y0 + r * BLOCK + BLOCK // 2 - 2
        for c in range(COLUMNS):
            x = X0 + c * BLOCK + BLOCK // 2 - 2
            total = 0
            for dy in range(4):
                start = (y + dy) * WIDTH + x
                total += sum(frame[start : start + 4])
            code = (code << 1) | (1 if total > 16 * 128 else 0)
    return decode(code)


if __name__ == "__main__":
    # Self-check: every code reads back from its own picture, and a flipped bit is refused.
    for k in (0, 1, 17_600_000_000, (1 << 40) - 1):
        for n in (1, 32, 255):
            assert read(picture(k, n)) == (k, n), (k, n)
    # Invert the first block: one bit flipped, the CRC refuses it.
    pic = bytearray(picture(17_600_000_123, 3))
    for y in range(Y0, Y0 + BLOCK):
        for x in range(X0, X0 + BLOCK):
            pic[y * WIDTH + x] = 255 - pic[y * WIDTH + x]
    assert read(bytes(pic)) is None
    print("framecode: ok")
