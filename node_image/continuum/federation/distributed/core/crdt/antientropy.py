"""Merkle anti-entropy, the pure part: which keys differ from a peer's, and answers.

``Descent`` compares two replicas' trees top-down: the hashes of level 1, then
the children of only the nodes that differ, down to the leaves, whose
``(key, digest)`` entries name the keys to exchange. It asks and the shell
carries each request to the peer::

    descent = Descent(replica.tree)
    while (req := descent.next_request()) is not None:
        descent.on_reply(messages.decode_digest_reply(await call(req), req))
    keys = descent.differing_keys

``answer_digest`` is the peer's side.
"""

from __future__ import annotations

from . import merkle, messages

HASH_CHUNK = 4096  # node hashes asked for in one request
LEAF_CHUNK = 512  # leaves whose entries are asked for in one request


class Descent:
    def __init__(self, tree: merkle.MerkleTree) -> None:
        self._tree = tree
        self._level = 1
        self._todo = list(range(tree.fanout))
        self._differ: list[int] = []
        self._leaves = False
        self._asked: messages.DigestRequest | None = None
        self.differing_keys: set[str] = set()

    def next_request(self) -> messages.DigestRequest | None:
        """The next question for the peer, or None once the differing keys are known."""
        if self._asked is not None:
            raise RuntimeError("the previous request has not been answered")
        while not self._todo:
            if self._leaves or not self._differ:
                return None
            if self._level == self._tree.depth:
                self._leaves = True
                self._todo = self._differ
            else:
                self._todo = self._tree.children(self._level, self._differ)
                self._level += 1
            self._differ = []
        size = LEAF_CHUNK if self._leaves else HASH_CHUNK
        chunk, self._todo = self._todo[:size], self._todo[size:]
        self._asked = messages.DigestRequest(self._level, tuple(chunk), entries=self._leaves)
        return self._asked

    def on_reply(self, reply: messages.DigestReply) -> None:
        asked, self._asked = self._asked, None
        if asked is None:
            raise RuntimeError("no request is waiting for a reply")
        if asked.entries:
            mine = self._tree.entries(asked.nodes)
            for leaf_mine, leaf_theirs in zip(mine, reply.entries, strict=True):
                self.differing_keys |= merkle.differing_keys(leaf_mine, leaf_theirs)
        else:
            self._differ += merkle.differing(
                asked.nodes, self._tree.hashes(asked.level, asked.nodes), reply.hashes)


def answer_digest(tree: merkle.MerkleTree, req: messages.DigestRequest) -> messages.DigestReply:
    """Our hashes (or leaf entries) for a peer's request; ValueError when out of range."""
    if req.entries:
        if req.level != tree.depth:
            raise ValueError("entries exist only at the leaf level")
        return messages.DigestReply(entries=tuple(tuple(leaf) for leaf in
                                                  tree.entries(req.nodes)))
    return messages.DigestReply(hashes=tuple(tree.hashes(req.level, req.nodes)))
