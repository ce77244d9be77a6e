"""The shared pipeline layer: what crosses between processes, and what moves progress forward."""
