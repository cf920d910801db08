"""Small data sets that ship with the library (read with :mod:`importlib.resources`, so they
work from a clone, an installed wheel or Colab alike).

- :mod:`~llmcourse.datasets.course_pages`: a snapshot of the course's own pages (book pages,
  chapter text, library reference) and questions about them, each with the passage that
  answers it: the knowledge base and test set of chapter 10 (retrieval-augmented generation).
- :mod:`~llmcourse.datasets.fact_cards`: a generator of short facts about invented creatures
  ("The zorblat is teal."), which no pretrained model can know: the reading-comprehension task
  on which chapter 10 compares closed-book and retrieval-augmented answers.
"""

from llmcourse.datasets.course_pages import (
    RagQuestion,
    collect_course_pages,
    evidence_span,
    load_course_pages,
    load_rag_questions,
    relevant_chunk_ids,
)
from llmcourse.datasets.fact_cards import (
    RELATIONS,
    Creature,
    FactCard,
    FactQuestion,
    fact_cards,
    fact_questions,
    make_creatures,
    reader_example,
    reader_prompt,
    reader_worlds,
)

__all__ = [
    "RagQuestion",
    "collect_course_pages",
    "evidence_span",
    "load_course_pages",
    "load_rag_questions",
    "relevant_chunk_ids",
    "RELATIONS",
    "Creature",
    "FactCard",
    "FactQuestion",
    "fact_cards",
    "fact_questions",
    "make_creatures",
    "reader_prompt",
    "reader_example",
    "reader_worlds",
]
