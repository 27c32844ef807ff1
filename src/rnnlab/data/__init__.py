"""The data sets: downloads, the Jena matrix and its windows, the IMDB reviews and their
tokenisation, generated stand-ins. Imports only ``rnnlab.core``.
"""
